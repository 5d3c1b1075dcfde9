"""Inference servers: exposition parser, engine profiles and the HTTP scraper."""
