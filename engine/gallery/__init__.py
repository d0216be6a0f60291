"""The gallery wing: face indexes (faiss folders in PaddleX's layout, Milvus collections), the one
place that opens or creates either, and the versioned per-key store of the service.
"""
