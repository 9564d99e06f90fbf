"""`lockprobe inspect`: a database file's headers, OS locks, filesystem."""
