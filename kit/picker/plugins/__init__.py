"""Built-in plugins, registered by name in ``kit.picker.registry.register_all``."""
