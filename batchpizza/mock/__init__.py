"""The local stand-in for the APIs batchpizza speaks, for offline demos and the tests."""
