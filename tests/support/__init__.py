"""Test helpers (not part of the library): memory leak scans and UI screenshots."""
