//! The worker thread: carries out the UI's requests on the device one at a time, so
//! that the screen stays live (and Cancel can be pressed) while the network works.

use std::sync::mpsc::{Receiver, Sender, channel};

use fieldsync_client::{Cancel, Device, DownloadOptions, Mode};

use super::app::{Reply, Request};

/// Starts the worker on `device`; requests go in with the [`Cancel`] of the
/// operation they start, answers come out on `replies`.
pub fn spawn(device: Device, replies: Sender<Reply>) -> Sender<(Request, Cancel)> {
    let (tx, rx) = channel();
    std::thread::Builder::new()
        .name("ui-worker".into())
        .spawn(move || work(&device, &rx, &replies))
        .expect("a thread starts");
    tx
}

fn work(device: &Device, requests: &Receiver<(Request, Cancel)>, replies: &Sender<Reply>) {
    for (request, cancel) in requests {
        let reply = answer(device, request, &cancel, replies);
        if replies.send(reply).is_err() {
            return;
        }
    }
}

/// A request's result, except that a device the office revoked wipes its data first
/// (as every command does) and says so instead.
fn unless_revoked<T>(
    device: &Device,
    r: fieldsync_client::Result<T>,
) -> fieldsync_client::Result<T> {
    r.map_err(|e| device.wiped_if_revoked(e))
}

fn answer(device: &Device, request: Request, cancel: &Cancel, replies: &Sender<Reply>) -> Reply {
    let text = |r: fieldsync_client::Result<String>| {
        Reply::Done(unless_revoked(device, r).map_err(|e| e.to_string()))
    };
    let progress = &mut |p: &fieldsync_client::Progress| {
        let _ = replies.send(Reply::Progress(p.clone()));
    };
    match request {
        Request::Login { user, password } => text(
            device
                .login(&user, &password)
                .map(|()| format!("logged in as {user}")),
        ),
        Request::Logout => text(device.logout().map(|warning| match warning {
            Some(w) => format!("logged out; {w}"),
            None => "logged out".into(),
        })),
        Request::SetMode(mode) => text(device.set_mode(mode).map(|()| match mode {
            Mode::Online => "online".into(),
            Mode::Offline => "offline".into(),
        })),
        Request::SetOptions(change) => {
            text(device.set_options(&change).map(|_| "options saved".into()))
        }
        Request::Tasks => {
            Reply::Tasks(unless_revoked(device, device.tasks()).map_err(|e| e.to_string()))
        }
        Request::Download { task, discard } => {
            let opts = DownloadOptions {
                discard_local_changes: discard,
                ..DownloadOptions::default()
            };
            let op = fieldsync_client::SyncOp::Download;
            let r = device.download(&task, &opts, progress, cancel);
            Reply::Finished(op, unless_revoked(device, r))
        }
        Request::Send => Reply::Finished(
            fieldsync_client::SyncOp::Send,
            unless_revoked(device, device.send(progress, cancel)),
        ),
        Request::Sync => Reply::Finished(
            fieldsync_client::SyncOp::Sync,
            unless_revoked(
                device,
                device.sync(&DownloadOptions::default(), progress, cancel),
            ),
        ),
        Request::CancelOwn | Request::CancelOther(_) | Request::RememberClosed(_) => {
            unreachable!("cancels and the UI's memory are the runner's, never the worker's")
        }
    }
}
