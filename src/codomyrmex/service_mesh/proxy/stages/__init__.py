"""The stages of a proxy call other than retry: bulkhead, hedging, fallback, timeouts."""
