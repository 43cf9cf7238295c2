"""HTTP server: native, llama.cpp, OpenAI and Tabby dialects over one engine (server issue)."""
