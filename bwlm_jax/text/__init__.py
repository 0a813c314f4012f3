"""Text for CLIP's text tower: the BPE tokenizer read from the files that come with the weights."""
