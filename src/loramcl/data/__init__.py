"""Lightning DataModules."""
