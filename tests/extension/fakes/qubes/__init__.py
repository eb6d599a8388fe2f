"""Test doubles of the few qubesd names the extension uses (not qubesd)."""
