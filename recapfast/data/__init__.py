"""Images in: folder discovery and header-first decoding, patching, and the synthetic recapture world."""
