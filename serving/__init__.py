"""LCH serving: the Ray Serve application and its HTTP client."""
