"""The upstream side: the requests session and its retries, error mapping, and reading a streamed body."""
