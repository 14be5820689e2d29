"""Blob stores: bytes under keys, on S3 or in a local directory.

Nouns: a *store* holds *objects* (bytes) under *keys* (validated relative paths). The
``BlobStore`` protocol in ``base`` is the whole contract; ``LocalBlobStore`` and
``S3BlobStore`` implement it, and ``open_store`` picks one from a URL.
"""

from bbp_dist_resume.blobstore.base import BlobStore, ObjectInfo, StoreProperties, check_key
from bbp_dist_resume.blobstore.local import LocalBlobStore
from bbp_dist_resume.blobstore.s3 import S3BlobStore, S3Settings
from bbp_dist_resume.blobstore.url import open_store, parse_s3_url

__all__ = [
    "BlobStore",
    "LocalBlobStore",
    "ObjectInfo",
    "S3BlobStore",
    "S3Settings",
    "StoreProperties",
    "check_key",
    "open_store",
    "parse_s3_url",
]
