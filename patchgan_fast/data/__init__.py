"""Data: reading medical image files (:mod:`.io`) and the built-in real datasets (:mod:`.datasets`)."""

from .io import MAX_PIXELS, DecodedFiles, Image, ReadError, fit_to_size, image_key, list_images, read_images, to_uint8

__all__ = ["MAX_PIXELS", "DecodedFiles", "Image", "ReadError", "fit_to_size", "image_key", "list_images", "read_images", "to_uint8"]
