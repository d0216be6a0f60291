"""Face datasets: label-file parsing, transforms, the demo generator and importers."""
