"""_definition layer."""
