"""Dataset-format readers shared by several methods, one reader per format (``litseg.readers.coco``: COCO instances)."""
