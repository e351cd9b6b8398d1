//! Files written whole: a temporary file beside the target, flushed to disk, then renamed
//! over it, so a reader (the CNI plugin, another node's weft) never sees half a file.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Writes `data` to `path` atomically; on failure the temporary file is removed and the
/// target is as it was.
pub fn write(path: &Path, data: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    let r = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}
