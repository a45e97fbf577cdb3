"""skyform's generator: SkyServe YAML parsing, the accelerator catalog, the Pulumi components
that deploy a service, and the ``skyform`` command line."""
