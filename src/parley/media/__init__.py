"""Robot media: aiortc peers fed by synthetic tracks or files, with counting and recording."""
