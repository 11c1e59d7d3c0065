"""The shipped configs, installed with the package: `default` (the Keras tutorial recipe), `fast`,
`cnn`. `configs/*.py` in the checkout run them; a config file anywhere builds on one by name with
`config_files.shipped_config('default')`."""
