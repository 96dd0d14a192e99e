"""Devices: edge devices, enrollment, credentials, assets, measuring points."""
