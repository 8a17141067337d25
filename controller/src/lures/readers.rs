//! Who reads each shared file a block lure goes into as a matter of
//! course (executable file names). Their reads are recorded, not raised:
//! for these files the evidence is the use of the credential at a decoy,
//! or a read by anything else (`cat`, `grep -r`, a script, a dumper).
//! docs/lures.md lists them per template.

/// ~/.ssh/config: read by every ssh invocation, whatever the host.
pub const SSH_CONFIG: &[&str] = &["ssh", "scp", "sftp", "sshfs", "autossh"];
/// ~/.aws/credentials: the AWS CLI and tools built on its profiles.
pub const AWS: &[&str] = &["aws", "aws_completer", "terraform", "aws-vault"];
/// ~/.pgpass: libpq's own programs.
pub const PGPASS: &[&str] = &[
    "psql",
    "pg_dump",
    "pg_dumpall",
    "pg_restore",
    "pg_basebackup",
    "pg_isready",
    "pgbench",
    "createdb",
    "dropdb",
    "createuser",
    "dropuser",
    "vacuumdb",
    "reindexdb",
    "clusterdb",
];
/// ~/.odbc.ini: unixODBC's tools, which read every DSN.
pub const ODBC: &[&str] = &["isql", "iusql", "odbcinst"];
/// ~/.my.cnf: the MySQL and MariaDB clients and tools.
pub const MYSQL: &[&str] = &[
    "mysql",
    "mariadb",
    "mysqldump",
    "mariadb-dump",
    "mysqladmin",
    "mariadb-admin",
    "mysqlcheck",
    "mariadb-check",
    "mysqlimport",
    "mariadb-import",
    "mysqlshow",
    "mariadb-show",
    "mysqlpump",
    "mysqlsh",
];
/// ~/.netrc: curl, wget, FTP clients and git's HTTP transport.
pub const NETRC: &[&str] = &[
    "curl",
    "wget",
    "ftp",
    "lftp",
    "ncftp",
    "git",
    "git-remote-http",
    "git-remote-https",
    "git-remote-ftp",
    "git-remote-ftps",
    "fetchmail",
    "mutt",
    "neomutt",
];
/// Files everything reads (/etc/hosts: every name lookup; GTK
/// bookmarks: every file dialog).
pub const EVERY: &[&str] = &["*"];
