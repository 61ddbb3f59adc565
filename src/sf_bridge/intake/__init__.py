"""Intake: learning that deals were won (stream + sweep) and enqueueing them durably."""
