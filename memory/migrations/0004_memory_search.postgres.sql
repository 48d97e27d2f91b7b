-- Full-text search over memories: a stemmed tsvector kept by the database, GIN-indexed.
ALTER TABLE memories ADD COLUMN search tsvector
    GENERATED ALWAYS AS (to_tsvector('english', content)) STORED;
CREATE INDEX memories_search_idx ON memories USING GIN (search);
