"""Models: starter model, GGUF export, versioned registry, llama.cpp backend."""
