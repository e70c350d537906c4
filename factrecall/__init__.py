"""factrecall."""
