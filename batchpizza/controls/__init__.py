"""What every attempt passes before it is sent, with no I/O of its own: pacing and the learned
rate (ratelimit), the breaker, the retry policy (retrying), the run's stop, and the gatekeeper
protocol (gate) that the engine asks and `Control` implements for one process."""
