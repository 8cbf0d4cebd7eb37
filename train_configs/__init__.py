"""Training configs (YAML), installed with the package as `vidtwin_gen.train_configs`."""
