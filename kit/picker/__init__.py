"""The endpoint picker: upstream's scheduling plugins in Python, configured by EndpointPickerConfig YAML."""

from kit.picker.config import LoadedConfig, load_picker_config, load_picker_file
from kit.picker.framework import Endpoint, InferenceRequest
from kit.picker.scheduler import Decision, NoEndpoints, Scheduler

__all__ = ["Decision", "Endpoint", "InferenceRequest", "LoadedConfig", "NoEndpoints", "Scheduler",
           "load_picker_config", "load_picker_file"]
