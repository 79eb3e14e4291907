"""The service layer: the rules of uploads, downloads, deletes and search."""
