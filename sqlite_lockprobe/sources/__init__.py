"""The sources of events: run a scenario, trace a program, inspect a file."""
