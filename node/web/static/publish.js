// The publish page: resumable file uploads with a progress bar, and example images, through the node's
// upload API. Requests carry the session cookie and the page's CSRF token (no API token needed).
"use strict";
(function () {
  var CHUNK = 8 * 1024 * 1024;
  var csrf = document.querySelector('meta[name="csrf-token"]').content;

  function api(method, url, body, headers) {
    var h = Object.assign({ "X-CSRF-Token": csrf }, headers || {});
    return fetch(url, { method: method, body: body, headers: h, credentials: "same-origin" }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (data) {
        if (!r.ok) {
          var err = new Error(data.detail || ("the node answered " + r.status));
          err.status = r.status;
          throw err;
        }
        return { status: r.status, data: data, offset: r.headers.get("Upload-Offset") };
      });
    });
  }

  function say(id, text) { document.getElementById(id).textContent = text; }

  var panel = document.getElementById("upload-panel");
  if (panel) {
    var versionId = panel.getAttribute("data-version-id");
    var input = document.getElementById("model-file");
    var bar = document.getElementById("upload-progress");
    var button = document.getElementById("upload-button");

    // An unfinished upload of the same file (name, size, date) resumes where it stopped, even after a reload.
    function key(file) { return "atrium-upload:" + versionId + ":" + file.name + ":" + file.size + ":" + file.lastModified; }

    function send(file, upload, offset, retries) {
      bar.value = file.size ? Math.floor(100 * offset / file.size) : 100;
      say("upload-status", "Uploading " + file.name + ": " + Math.floor(100 * offset / file.size) + "%");
      // data-chunk-bytes lets tests send small pieces; people get CHUNK.
      var size = parseInt(panel.getAttribute("data-chunk-bytes"), 10) || CHUNK;
      var piece = file.slice(offset, offset + size);
      return api("PATCH", upload.url, piece, { "Upload-Offset": String(offset), "Content-Type": "application/octet-stream" })
        .then(function (r) {
          var next = parseInt(r.offset, 10);
          if (r.status === 201 && r.data.file) return r.data.file;
          return send(file, upload, next, 5);
        }, function (err) {
          if (retries <= 0 || (err.status && err.status < 500 && err.status !== 409)) throw err;
          // Ask the node where it got to, then carry on from there.
          say("upload-status", "Connection lost at " + Math.floor(100 * offset / file.size) + "%; resuming…");
          return new Promise(function (ok) { setTimeout(ok, 1000); })
            .then(function () { return api("GET", upload.url); })
            .then(function (r) { return send(file, upload, parseInt(r.offset, 10), retries - 1); });
        });
    }

    button.addEventListener("click", function () {
      var file = input.files[0];
      if (!file) { say("upload-status", "Choose a file first."); return; }
      button.disabled = true;
      var saved = localStorage.getItem(key(file));
      var start = saved
        ? api("GET", saved).then(function (r) { return { upload: r.data, offset: parseInt(r.offset, 10) }; },
                                 function () { localStorage.removeItem(key(file)); return null; })
        : Promise.resolve(null);
      start.then(function (resumed) {
        if (resumed) return resumed;
        return api("POST", "/api/node/v1/versions/" + versionId + "/uploads",
                   JSON.stringify({ filename: file.name, size: file.size, type: "Model" }),
                   { "Content-Type": "application/json" })
          .then(function (r) { localStorage.setItem(key(file), r.data.url); return { upload: r.data, offset: 0 }; });
      }).then(function (s) {
        return send(file, s.upload, s.offset, 5);
      }).then(function (done) {
        localStorage.removeItem(key(file));
        bar.value = 100;
        say("upload-status", "Uploaded " + done.name + " (SHA256 " + done.hashes.SHA256 + ").");
        var list = document.getElementById("file-list");
        var empty = list.querySelector(".empty");
        if (empty) list.removeChild(empty);
        var li = document.createElement("li");
        li.textContent = done.name;
        list.appendChild(li);
      }).catch(function (err) {
        say("upload-status", "Upload stopped: " + err.message + " — choose the same file and press Upload to resume.");
      }).then(function () { button.disabled = false; });
    });
  }

  var images = document.getElementById("image-panel");
  if (images) {
    var imageVersion = images.getAttribute("data-version-id");
    var imageButton = document.getElementById("image-button");
    imageButton.addEventListener("click", function () {
      var file = document.getElementById("image-file").files[0];
      if (!file) { say("image-status", "Choose an image first."); return; }
      var level = document.getElementById("image-level").value;
      imageButton.disabled = true;
      say("image-status", "Sending " + file.name + "…");
      api("POST", "/api/node/v1/versions/" + imageVersion + "/images?nsfw_level=" + encodeURIComponent(level), file,
          { "Content-Type": file.type || "application/octet-stream" })
        .then(function (r) {
          var li = document.createElement("li");
          li.className = "card";
          var img = document.createElement("img");
          img.src = r.data.url;
          img.alt = "Example image";
          li.appendChild(img);
          document.getElementById("image-list").appendChild(li);
          say("image-status", "Added " + file.name + (r.data.meta && r.data.meta.prompt ? " with its generation data." : "."));
        }, function (err) { say("image-status", "The image was refused: " + err.message); })
        .then(function () { imageButton.disabled = false; });
    });
  }
})();
