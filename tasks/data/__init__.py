"""Data stages, in DVC order: validate (raw JSONL -> normalized chats), anonymize (with its
recognizers and the second detector, pii_guard), split (frozen hold-out), and versioning (DVC)."""
