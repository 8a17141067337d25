//! The remote desktop lures' files: a saved `.rdp` connection naming the
//! decoy with a planted user name, and a note of saved remote desktop
//! logins with its password.

use super::{LureError, Renderer};

/// The domain a planted RDP login is in, unless the slot names one.
const DOMAIN: &str = "HOSPITAL";

impl Renderer<'_> {
    /// `host` or `host:port`, as Remote Desktop writes a server.
    fn rdp_address(&self) -> Option<(String, String)> {
        self.decoy("rdp", 3389).map(|(name, host, port)| {
            let address = if port == 3389 {
                host
            } else {
                format!("{host}:{port}")
            };
            (name, address)
        })
    }

    /// `rdp-file`: what Remote Desktop Connection saves with "Save As" —
    /// UTF-16 with a byte-order mark and CRLF line ends, its usual
    /// settings, the decoy's address and the planted user name (Windows
    /// keeps a saved password elsewhere, encrypted for that user).
    pub(super) fn rdp_file(&mut self) -> Result<(), LureError> {
        let (name, address) = self
            .rdp_address()
            .ok_or_else(|| self.err("needs a decoy"))?;
        let domain = self.param("domain").unwrap_or(DOMAIN).to_owned();
        let settings = [
            "screen mode id:i:2",
            "use multimon:i:0",
            "desktopwidth:i:1920",
            "desktopheight:i:1080",
            "session bpp:i:32",
            "winposstr:s:0,1,0,0,1600,900",
            "compression:i:1",
            "keyboardhook:i:2",
            "audiocapturemode:i:0",
            "videoplaybackmode:i:1",
            "connection type:i:7",
            "networkautodetect:i:1",
            "bandwidthautodetect:i:1",
            "displayconnectionbar:i:1",
            "enableworkspacereconnect:i:0",
            "disable wallpaper:i:0",
            "allow font smoothing:i:0",
            "allow desktop composition:i:0",
            "disable full window drag:i:1",
            "disable menu anims:i:1",
            "disable themes:i:0",
            "disable cursor setting:i:0",
            "bitmapcachepersistenable:i:1",
        ];
        let mut text: String = settings.iter().map(|l| format!("{l}\r\n")).collect();
        text.push_str(&format!("full address:s:{address}\r\n"));
        for l in [
            "audiomode:i:0",
            "redirectprinters:i:1",
            "redirectcomports:i:0",
            "redirectsmartcards:i:1",
            "redirectclipboard:i:1",
            "redirectposdevices:i:0",
            "autoreconnection enabled:i:1",
            "authentication level:i:2",
            "prompt for credentials:i:0",
            "negotiate security layer:i:1",
            "remoteapplicationmode:i:0",
            "alternate shell:s:",
            "shell working directory:s:",
            "gatewayhostname:s:",
            "gatewayusagemethod:i:4",
            "gatewaycredentialssource:i:4",
            "gatewayprofileusagemethod:i:0",
            "promptcredentialonce:i:0",
            "gatewaybrokeringtype:i:0",
            "use redirection server name:i:0",
            "rdgiskdcproxy:i:0",
            "kdcproxyname:s:",
            "drivestoredirect:s:",
        ] {
            text.push_str(l);
            text.push_str("\r\n");
        }
        text.push_str(&format!("username:s:{domain}\\{}\r\n", self.m().username));
        let mut content = vec![0xff, 0xfe];
        content.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        let path = self.dir_file("~/Desktop", format!("{name}.rdp"));
        self.whole(path, content, 0o644);
        Ok(())
    }

    /// `rdp-credentials`: a note of remote desktop logins kept beside the
    /// connections, where a credential hunter looks (`grep -ri password`
    /// finds it). Without a decoy it names a jump host of its own.
    pub(super) fn rdp_credentials(&mut self) {
        let (name, address) = self
            .rdp_address()
            .unwrap_or_else(|| ("rad-jump01".into(), "rad-jump01.hospital.local".into()));
        let domain = self.param("domain").unwrap_or(DOMAIN).to_owned();
        let date = self.date();
        let text = format!(
            "Remote desktop logins - reading room servers\r\n\
             (do not share - IT Service Desk ext. 4357)\r\n\
             \r\n\
             {name}  ({address})\r\n\
             \x20 user:     {domain}\\{user}\r\n\
             \x20 password: {password}\r\n\
             \x20 notes:    NLA on; service account for the PACS worklist, not for personal use\r\n\
             \r\n\
             last checked {date}\r\n",
            user = self.m().username,
            password = self.m().password,
        );
        let path = self.dir_file("~/Documents", "remote-desktop-logins.txt".into());
        self.whole(path, text.into_bytes(), 0o600);
    }
}
