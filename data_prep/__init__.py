"""Dataset tools: importers to sharded TFRecords, the demo-set generator, BERT conversion."""
