//! The database lures' files: a MySQL client's `~/.my.cnf` and a dump
//! naming the decoy; a SQL Server application's connection string and an
//! ODBC DSN.

use super::{LureError, Renderer, readers, xml_escape};

impl Renderer<'_> {
    /// `mysql-credentials`.
    pub(super) fn mysql_credentials(&mut self) {
        let (_, host, port) = self
            .decoy("mysql", 3306)
            .unwrap_or_else(|| ("".into(), "lis-db01".into(), 3306));
        let db = self.param("database").unwrap_or("lis").to_owned();
        let mut cnf = format!(
            // Quoted: a `#` in the password would start a comment.
            "[client]\nuser = {}\npassword = \"{}\"\nhost = {host}\n",
            self.m().username,
            self.m().password
        );
        if port != 3306 {
            cnf.push_str(&format!("port = {port}\n"));
        }
        cnf.push_str(&format!("\n[mysql]\ndatabase = {db}\n"));
        self.block("~/.my.cnf".into(), cnf, 0o600, readers::MYSQL);
        let date = self.date();
        let dump = format!(
            "-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB, for debian-linux-gnu (x86_64)\n\
             --\n\
             -- Host: {host}    Database: {db}\n\
             -- ------------------------------------------------------\n\
             -- Server version\t10.11.19-MariaDB-0+deb12u1\n\n\
             /*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;\n\
             /*!40101 SET NAMES utf8mb4 */;\n\
             /*!40103 SET @OLD_TIME_ZONE=@@TIME_ZONE */;\n\
             /*!40103 SET TIME_ZONE='+00:00' */;\n\n\
             --\n-- Table structure for table `results`\n--\n\n\
             DROP TABLE IF EXISTS `results`;\n\
             CREATE TABLE `results` (\n\
             \x20 `id` bigint(20) NOT NULL AUTO_INCREMENT,\n\
             \x20 `accession` varchar(32) NOT NULL,\n\
             \x20 `mrn` varchar(16) NOT NULL,\n\
             \x20 `test_code` varchar(16) NOT NULL,\n\
             \x20 `value` varchar(64) DEFAULT NULL,\n\
             \x20 `resulted_at` datetime NOT NULL,\n\
             \x20 PRIMARY KEY (`id`)\n\
             ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;\n\n\
             -- Dump completed on {date}  2:14:07\n"
        );
        let dir = self.at("~/backups", "~/Documents/Backups");
        let path = self.dir_file(dir, format!("{db}-{date}.sql"));
        self.whole(path, dump.into_bytes(), 0o600);
    }

    /// `mssql-connection`.
    pub(super) fn mssql_connection(&mut self) -> Result<(), LureError> {
        let (_, host, port) = self
            .decoy("mssql", 1433)
            .unwrap_or_else(|| ("".into(), "ehr-sql01".into(), 1433));
        const APPS: &[&str] = &["ehr-reporting", "lab-interface", "pharmacy-sync"];
        let app = self
            .param("app")
            .map(str::to_owned)
            .unwrap_or_else(|| self.rng.pick(APPS).to_string());
        let db = self.param("database").unwrap_or("EHR_Reporting").to_owned();
        let (user, password) = (self.m().username.clone(), self.m().password.clone());
        let server = if port == 1433 {
            format!("tcp:{host}")
        } else {
            format!("tcp:{host},{port}")
        };
        let settings = serde_json::json!({
            "Logging": {"LogLevel": {"Default": "Warning", "Microsoft.AspNetCore": "Warning"}},
            "ConnectionStrings": {
                "Reporting": format!(
                    "Server={server};Database={db};User Id={user};Password={password};Encrypt=False;TrustServerCertificate=True;"
                ),
            },
            "AllowedHosts": "*",
        });
        let text =
            serde_json::to_string_pretty(&settings).map_err(|e| self.err(e.to_string()))? + "\n";
        let dir = self.projects(&app);
        let path = self.dir_file(&dir, "appsettings.json".into());
        self.whole(path, text.into_bytes(), 0o600);
        if self.windows() {
            // The same application's IIS configuration, as published next
            // to it: Windows keeps ODBC data sources in the registry,
            // without passwords.
            let text = format!(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<configuration>\r\n  <connectionStrings>\r\n    <add name=\"Reporting\" connectionString=\"Data Source={};Initial Catalog={};User ID={};Password={};Encrypt=False\" providerName=\"System.Data.SqlClient\" />\r\n  </connectionStrings>\r\n  <system.web>\r\n    <compilation targetFramework=\"4.8\" />\r\n    <httpRuntime targetFramework=\"4.8\" />\r\n    <customErrors mode=\"RemoteOnly\" />\r\n  </system.web>\r\n</configuration>\r\n",
                xml_escape(&server),
                xml_escape(&db),
                xml_escape(&user),
                xml_escape(&password)
            );
            self.whole(format!("{dir}/web.config"), text.into_bytes(), 0o600);
            return Ok(());
        }
        let dsn = format!(
            "[{db}]\nDriver = FreeTDS\nDescription = {app}\nServer = {host}\nPort = {port}\nDatabase = {db}\nTDS_Version = 7.4\nUID = {user}\nPWD = {password}\n"
        );
        self.block("~/.odbc.ini".into(), dsn, 0o600, readers::ODBC);
        Ok(())
    }
}
