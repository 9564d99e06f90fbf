"""Workers that drive a scenario's groups: threads, processes and asyncio coroutines.

All three run the same steps through `Session` (one instrumented connection) and
`steps.StepRunner`; they differ only in how they wait and where the sqlite calls run."""
