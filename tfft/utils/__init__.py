"""Helpers shared by every layer of tfft: file writes, argument checks, the network probe."""
