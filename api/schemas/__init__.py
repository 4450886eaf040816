"""Request and response schemas: ``XCreate`` / ``XUpdate`` / ``XPublic`` per resource."""
