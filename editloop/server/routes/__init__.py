"""One router per dialect; each route parses, calls the engine through Services, shapes the reply."""
