"""LSP server: inline completions and edit tracking (LSP issue)."""
