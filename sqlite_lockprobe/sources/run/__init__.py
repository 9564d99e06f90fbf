"""`lockprobe run`: scenarios, their preparation, the engine and its workers."""
