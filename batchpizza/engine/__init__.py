"""The engine: prompts held in memory in, results out, through the controls and a provider, each
result handed to a store as it finishes. It knows no files and no command line."""
