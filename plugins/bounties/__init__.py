"""Bounties with escrow on the node's ledger."""
