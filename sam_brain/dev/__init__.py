"""Developer tools: the tiny model, example transcripts and the demo."""
