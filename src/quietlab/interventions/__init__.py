"""Interventions: ablations of probed features and their random controls."""
