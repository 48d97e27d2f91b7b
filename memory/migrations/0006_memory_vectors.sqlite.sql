-- A memory's embedding (float32 little-endian, unit length) and the model that made it;
-- NULL until embedded. Similarity is computed over one user's rows.
ALTER TABLE memories ADD COLUMN embedding BLOB;
ALTER TABLE memories ADD COLUMN embedding_model TEXT;
