// Drives noVNC (our view.html) in headless Chromium for proxy/tests/web.rs: one command
// per line on stdin, one answer per line on stdout.
//   pixels          -> "W H <base64 of RGBA>" of the noVNC canvas (or "0 0 ")
//   type TEXT       -> "ok" after typing TEXT into the canvas
//   press KEY       -> "ok" (a Playwright key name, e.g. Enter)
//   combo F7        -> "ok" after ctrl-alt-KEY through noVNC's sendKey (the browser host
//                      would take the real combination)
//   shot PATH       -> "ok" after a PNG screenshot of the page
//   quit
const { chromium } = require('playwright-core');
const readline = require('readline');

(async () => {
  const url = process.argv[2];
  const browser = await chromium.launch({
    executablePath: process.env.XENVT_CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = await browser.newPage({ viewport: { width: 800, height: 520 } });
  page.on('console', (m) => process.stderr.write(`browser: ${m.text()}\n`));
  await page.goto(url);
  await page.waitForFunction(() => document.getElementById('status').textContent === 'connected',
    null, { timeout: 30000 });
  console.log('connected');
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    const sp = line.indexOf(' ');
    const cmd = sp < 0 ? line : line.slice(0, sp);
    const arg = sp < 0 ? '' : line.slice(sp + 1);
    if (cmd === 'pixels') {
      const r = await page.evaluate(() => {
        const c = document.querySelector('#screen canvas');
        if (!c || !c.width) return '0 0 ';
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let s = '';
        for (let i = 0; i < d.length; i += 32768) {
          s += String.fromCharCode.apply(null, d.subarray(i, i + 32768));
        }
        return `${c.width} ${c.height} ${btoa(s)}`;
      });
      console.log(r);
    } else if (cmd === 'type') {
      await page.evaluate(() => window.rfb.focus());
      await page.keyboard.type(arg);
      console.log('ok');
    } else if (cmd === 'press') {
      await page.evaluate(() => window.rfb.focus());
      await page.keyboard.press(arg);
      console.log('ok');
    } else if (cmd === 'combo') {
      await page.click(arg === 'F7' ? '#desktop' : '#console');
      console.log('ok');
    } else if (cmd === 'shot') {
      await page.screenshot({ path: arg });
      console.log('ok');
    } else if (cmd === 'quit') {
      break;
    } else {
      console.log(`unknown ${cmd}`);
    }
  }
  await browser.close();
})().catch((e) => { console.error(e); process.exit(1); });
