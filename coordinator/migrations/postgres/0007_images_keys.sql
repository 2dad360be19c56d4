-- PostgreSQL version of migrations/sqlite/0007_images_keys.sql: the same schema; integers are BIGINT (SQLite's
-- INTEGER is 64-bit), timestamps stay RFC 3339 UTC text so both databases order them alike.

-- Images VMs boot from, users' SSH keys, what each host caches, and what a VM was made from
-- and where it can be reached.

-- The image catalogue. The file of a `ready` image is `<data-dir>/images/<id>`; its content
-- never changes once ready (a new file is a new image). `size_bytes`, `virtual_size_bytes`,
-- `format` and `sha256` are NULL until a file has been checked.
CREATE TABLE images (
    id                 TEXT PRIMARY KEY NOT NULL,
    name               TEXT NOT NULL UNIQUE,
    os                 TEXT,
    status             TEXT NOT NULL CHECK (status IN ('pending', 'downloading', 'ready', 'error')),
    -- Why an `error` image has no usable file.
    error              TEXT,
    -- Where the coordinator downloads the file from; NULL for an uploaded image.
    source_url         TEXT,
    -- The checksum the admin expects (lower-case hex), checked after the transfer.
    expected_sha256    TEXT,
    min_disk_gb        BIGINT,
    -- The login user of the image's cloud-init (e.g. `debian`), shown in a VM's `ssh`.
    default_user       TEXT NOT NULL,
    size_bytes         BIGINT,
    virtual_size_bytes BIGINT,
    format             TEXT CHECK (format IN ('qcow2', 'raw')),
    sha256             TEXT,
    created_at         TEXT NOT NULL
);

-- Per-user SSH public keys, stored normalised (`<type> <base64> [comment]`).
CREATE TABLE ssh_keys (
    id          TEXT PRIMARY KEY NOT NULL,
    owner_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    key_type    TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    UNIQUE (owner_id, name),
    UNIQUE (owner_id, fingerprint)
);

-- Images each host keeps as a verified base volume, as its agent last registered them (or as
-- the coordinator served them to it since). Deleting an image forgets its copies.
CREATE TABLE host_images (
    host_id    TEXT NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    image_id   TEXT NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    sha256     TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (host_id, image_id)
);

CREATE INDEX host_images_by_image ON host_images (image_id);

-- The image a VM's disk was made from (NULL: a blank disk). An image is in use while any
-- VM row names it; the check before deleting it and the insert of a VM naming it are both
-- done in write transactions, and the foreign key refuses what would slip through.
ALTER TABLE vms ADD COLUMN image_id TEXT REFERENCES images (id);
-- The image's login user when the VM was created, for the VM's `ssh` object.
ALTER TABLE vms ADD COLUMN login_user TEXT;
-- Where the guest can be reached, from the host's reports (replaced by every report that is
-- applied): a JSON array of IP address strings, and the host's SSH port forward if any.
ALTER TABLE vms ADD COLUMN addresses TEXT NOT NULL DEFAULT '[]';
ALTER TABLE vms ADD COLUMN ssh_host TEXT;
ALTER TABLE vms ADD COLUMN ssh_port BIGINT;

CREATE INDEX vms_by_image ON vms (image_id);
