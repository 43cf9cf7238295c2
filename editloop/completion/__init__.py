"""The completion engine shared by every transport (built in the server issue)."""
